"""From release files to tensors: the release and its answer space, ECG records, the prepared-folder
contract and its builder, label derivations (upperbound classes, dense attributes, measurements), the
torch datasets and the bundled tokenizer vocabulary."""

from typing import Any

#: The old ``ecgqa.data`` module's names (now in ``ecgqa.data.torch_datasets``), still served with a warning.
_TORCH_DATASETS_NAMES = frozenset(
    {"ECGQADataset", "UpperboundDataset", "collate_qa", "collate_upperbound", "make_loader"}
)


def __getattr__(name: str) -> Any:
    # Imported lazily so that ``import ecgqa.data`` (and so ``ecgqa --help``) stays torch-free.
    if name not in _TORCH_DATASETS_NAMES:
        raise AttributeError(f"module 'ecgqa.data' has no attribute {name!r}")
    import importlib
    import warnings

    warnings.warn(f"ecgqa.data.{name} moved to ecgqa.data.torch_datasets.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("ecgqa.data.torch_datasets"), name)
