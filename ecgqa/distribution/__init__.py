"""Where researchers get things: Hub-ready datasets and checkpoints, and the source records ECG-QA needs.

- ``hub_dataset``: prepared folders → a Hugging Face dataset folder (Parquet shards + dataset card);
- ``hub_model``: a checkpoint folder → its model card, and Hub repo ids → local checkpoint folders;
- ``records_needed``: the PTB-XL / MIMIC-IV-ECG record files a release references, as a download list,
  and a check of a local copy.

Both exports write :data:`MARKER` last, a JSON object whose ``"kind"`` (:data:`DATASET_KIND`,
:data:`CHECKPOINT_KIND`) says which export made the folder (``ecgqa.files.marker_kind``).
"""

MARKER = "ecgqa_export.json"
DATASET_KIND = "ecgqa-hub-dataset"
CHECKPOINT_KIND = "ecgqa-hub-checkpoint"
