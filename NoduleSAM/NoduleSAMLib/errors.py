"""The one exception type the engine raises for problems a user can fix."""


class NoduleSAMError(Exception):
    """Bad input or a missing/corrupt model; the message tells the user what to do.

    The command line prints it as one line and exits non-zero; the Slicer module shows it
    in a dialog and leaves the scene unchanged.
    """
