"""NoduleSAM headless training and experiment package (``nodulesam-train``).

Modules:
    detector_data   the bundled detector's training slices (full LIDC slices + pasted VOI nodules)
    nnunet          nnU-Net v2 2D export / compact plan / training / packaging
    train_detector  one-command build + train + package of ``nodule-detector`` (and ``nodule-voi``)
    cli             ``nodulesam-train`` subcommands
"""

__version__ = "0.1.0"
