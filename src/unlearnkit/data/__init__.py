"""Datasets, stable sample ids, forget-set selection and batch iteration."""

from .datasets import (ArrayDataset, DatasetSplits, dataset_labels, describe_dataset, list_datasets,
                       load_dataset, register_dataset)
from .forget import ForgetRequest, UnlearningData, make_unlearning_data, read_ids_file, select_forget
from .loading import augment_batch, iterate_batches, num_batches

__all__ = [
    "ArrayDataset", "DatasetSplits", "ForgetRequest", "UnlearningData", "augment_batch", "dataset_labels",
    "describe_dataset", "iterate_batches", "list_datasets", "load_dataset", "make_unlearning_data",
    "num_batches", "read_ids_file", "register_dataset", "select_forget",
]
