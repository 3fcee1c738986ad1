"""Where researchers get things: Hub-ready datasets and checkpoints, and the source records ECG-QA needs.

- ``hub_dataset``: prepared folders → a Hugging Face dataset folder (Parquet shards + dataset card);
- ``hub_model``: a checkpoint folder → its model card, and Hub repo ids → local checkpoint folders;
- ``records_needed``: the PTB-XL / MIMIC-IV-ECG record files a release references, as a download list,
  and a check of a local copy.
"""
