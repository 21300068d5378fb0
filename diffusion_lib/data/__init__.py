"""Data: datasets by name as float images in [-1, 1], the files they come from, the synthetic toys, and
the one [-1, 1] <-> uint8 map."""

from .datasets import (DATASETS, SPLITS, DatasetInfo, ImageFolderDataset, ImageTensorDataset, dataset_info,
                       load_dataset)
from .formats import DATA_ENV, OFFLINE_ENV, DatasetNotFoundError, data_home, read_idx
from .images import to_float, to_uint8
from .toys import TOY_2D, make_shapes, toy_2d
