"""timit_lit: framewise phone classification on TIMIT (NTU ML2021 HW2-1) with PyTorch Lightning."""

__version__ = "1.0.0"
