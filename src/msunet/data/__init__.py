"""Data: from a folder of images and masks to the batches training sees. No keras except `feeding`.

- `imageio`: PNG/JPEG/TIFF reading (lazily for huge TIFFs) and atomic writing;
- `volumes`: NIfTI / TIFF-stack / .npy volumes (spacing, affine) and NIfTI writing;
- `preprocessing`: scaling by dtype, normalisation, resampling (shared with prediction);
- `pairs`: image/mask pairs of a folder, splits, mask decoding to class ids;
- `samples`: a split in memory, random patches with augmentation, fixed tiles, calibration patches;
- `targets`: one-hot targets per head, downsampled by a rule;
- `feeding`: the `keras.utils.PyDataset`s that feed `fit`;
- `synthetic`: the demo's generated dataset.

A new input format goes into `imageio`; a new augmentation into `samples`.
"""
