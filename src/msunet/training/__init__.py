"""Training: `train(config, data_dir, out_dir)` (`run`) and what it is made of.

- `check`: `msunet check`, the dry run: survey, plan (with the device probe), report;
- `probe`: seconds per training step per precision on this machine, cached;
- `trainer`: the step (`MultiScaleTrainer`: a target and a weight per head), optimizer, schedules;
- `losses`, `metrics`: Dice / CE / focal / Tversky from logits; Dice and IoU per head and class;
- `callbacks`: time budget, backbone freeze, the epoch checkpoint;
- `run_folder`: the run folder's files (atomic writers, resume state, curves) and reading a run back.
"""
