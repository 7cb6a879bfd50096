"""``python -m timit_lit.synthetic OUT_DIR``: the generator of TIMIT-shaped data, which lives
in :mod:`timit_lit.data.synthetic` (beside the files it writes), under its documented name."""

from timit_lit.data.synthetic import (
    FILE_NAMES,
    FRAME_DIMS,
    MARKER,
    NUM_PHONES,
    ROW_DIMS,
    check_generator_may_write,
    generated_files,
    has_timit_files,
    main,
    splice,
    write_synthetic_timit,
)

__all__ = ["FILE_NAMES", "FRAME_DIMS", "MARKER", "NUM_PHONES", "ROW_DIMS", "check_generator_may_write",
           "generated_files", "has_timit_files", "main", "splice", "write_synthetic_timit"]

if __name__ == "__main__":
    main()
