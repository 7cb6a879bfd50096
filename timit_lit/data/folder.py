"""The ``*_11.npy`` files of one data folder: their float32 memory maps, their labels, and the utterances of all their rows."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Optional

import numpy as np
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from timit_lit.data.files import TEST_FEATURES, TRAIN_FEATURES, TRAIN_LABELS, float32_features, load_labels, open_features, report
from timit_lit.data.row_links import RowsInUtteranceOrder, Utterances, recover_utterances
from timit_lit.data.row_space import RowSpace, require_utterances
from timit_lit.errors import InputError


class DataFolder:
    """A folder of HW2-1 files, read when first asked and checked as read.

    Each feature file is one float32 memory map while a dataset or a caller holds it, and no
    longer: a map's pages, once read (the finiteness check reads them all), count in this
    process's resident memory for as long as the map lives, and ContextWindows copies out
    what it uses. The folder's utterances are recovered once, across all its files.
    """

    def __init__(self, data_dir: Path, num_classes: int, cache_dir: Optional[Path] = None):
        self.data_dir, self.num_classes, self.cache_dir = data_dir, num_classes, cache_dir
        if not data_dir.is_dir():
            raise InputError(f"{data_dir}: data folder not found (expected {TRAIN_FEATURES}, {TRAIN_LABELS}, {TEST_FEATURES})")
        first = next((data_dir / n for n in (TRAIN_FEATURES, TEST_FEATURES) if (data_dir / n).exists()), None)
        if first is None:
            raise InputError(f"{data_dir}: neither {TRAIN_FEATURES} nor {TEST_FEATURES} is there")
        self.first_file = first
        self.width = int(open_features(first).shape[1])  # reading an .npy header is cheap
        self._maps: weakref.WeakValueDictionary[str, np.memmap] = weakref.WeakValueDictionary()
        self._utterances: Optional[Utterances] = None

    def feature_files(self) -> list[str]:
        """The feature files of the folder, in the order their rows are numbered together."""
        return [name for name in (TRAIN_FEATURES, TEST_FEATURES) if (self.data_dir / name).is_file()]

    def features(self, name: str) -> np.ndarray:
        """The float32 memory map of the feature file ``name``, checked when mapped."""
        features = self._maps.get(name)
        if features is not None:
            return features
        path = self.data_dir / name
        width = open_features(path).shape[1]
        if width != self.width:
            raise InputError(f"{path}: rows have {width} features, but the data's width is {self.width} "
                             f"(train and test files must match)")
        features = self._maps[name] = float32_features(path, self.cache_dir)
        return features

    def labels(self, features_name: str, labels_name: str) -> np.ndarray:
        """The labels of every row of ``features_name``, in its order (read and checked)."""
        n_rows = len(self.features(features_name))
        return load_labels(self.data_dir / labels_name, n_rows, self.num_classes, self.data_dir / features_name)

    def convert(self, name: str) -> None:
        """Convert ``name``'s float64 features to the float32 cache, if it exists and needs it."""
        path = self.data_dir / name
        if path.is_file() and open_features(path).dtype != np.float32:
            self.features(name)

    def utterances(self) -> Utterances:
        """The utterances of every feature file of the folder together
        (:func:`timit_lit.data.row_links.recover_utterances`: rows in any order, an utterance's
        rows possibly in several files), recovered once, said in one line on stderr, and kept."""
        if self._utterances is None:
            files = self.feature_files()
            self._utterances = recover_utterances([self.features(name) for name in files])
            if rank_zero_only.rank == 0:
                report(self._describe(files, self._utterances))
        return self._utterances

    def row_space(self, file: str, needed_by: Optional[str] = None, all_files: bool = False) -> tuple[RowSpace, object]:
        """The row space of a stage for ``file`` and the features by its row ids: ``file``'s own
        rows, or, where the run reads utterances (``needed_by`` names the option that does) and
        the folder's utterances are not runs of one file's rows or the stage serves ``all_files``'
        rows, all files' rows in utterance order (for the course's files: file by file)."""
        files = tuple(self.feature_files())
        if needed_by is not None:
            require_utterances(self.utterances(), self.data_dir, needed_by)
            if all_files or not self.utterances().in_file_order:
                features = RowsInUtteranceOrder([self.features(name) for name in files], self.utterances())
                return RowSpace(self.data_dir, files, file, True, len(features), folder_utterances=self.utterances), features
        features = self.features(file)
        return RowSpace(self.data_dir, files, file, False, len(features), folder_utterances=self.utterances), features

    def _describe(self, files: list[str], found: Utterances) -> str:
        sizes = ", ".join(f"{name} {n:,}" for name, n in zip(files, np.diff(found.file_starts)))
        line = (f"{self.data_dir}: {len(files)} files ({sizes} rows): {len(found):,} utterances "
                f"(mean {len(found.order) / max(len(found), 1):.1f} rows), ")
        if found.in_file_order:
            return line + "rows in time order"
        line += "rows re-ordered into utterances"
        if files == [TRAIN_FEATURES, TEST_FEATURES]:
            utterance, n_train = found.utterance_of(), int(found.file_starts[1])
            has_training = np.zeros(len(found), dtype=bool)
            has_training[utterance[:n_train]] = True
            line += f"; {int(has_training[utterance[n_train:]].sum()):,} test rows sit inside training utterances"
        return line
