"""``ecgqa generate``: ECG-QA questions from labels (PTB-XL faithfully, and other ECG datasets).

``source.py`` the input contract; ``templates.py`` the 70 templates (package data ``templates.psv``);
``engine.py`` answers + slot filling; ``sampling.py`` the release's caps and splits; ``writer.py`` the
release layout + generation.json; ``check.py`` agreement with a release; ``ptbxl.py`` the PTB-XL reader.
"""
