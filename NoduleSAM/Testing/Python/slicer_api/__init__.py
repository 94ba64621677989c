"""Static checks of the Slicer module's calls into Slicer, Qt, CTK and MRML (see docs/slicer.md).

``declarations.json`` holds the declarations of every Slicer API the module uses, copied
verbatim from Slicer's source with the repository, path and commit of each (and from the
``slicer-core`` wheel's ``slicer/util.py``); :mod:`.extract` parses declarations (and can harvest
them from a Slicer checkout); :mod:`.check` finds the module's uses and checks them.
"""
