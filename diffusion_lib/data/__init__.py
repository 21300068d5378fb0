"""Data: datasets by name as float images in [-1, 1], the 2-D toys, and the one [-1, 1] <-> uint8 map."""

from .datasets import (DATASETS, DatasetInfo, DatasetNotFoundError, ImageFolderDataset, ImageTensorDataset,
                       data_home, dataset_info, load_dataset, make_shapes, read_idx, toy_2d)
from .images import to_float, to_uint8
