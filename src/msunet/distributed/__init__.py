"""Scale-out on existing engines: `keras.distribution` for training, Ray Data for batch prediction.

- `msunet.distributed.ray_predict.predict_ray(model, inputs, out_dir, address=...)`: `msunet predict
  --engine ray`, an actor pool on a Ray cluster (`pip install 'msunet[ray]'`).
- `train.distribution="data_parallel"` (`msunet train --distributed`): `msunet.train` sets
  `keras.distribution.DataParallel` over every device, across hosts with
  `keras.distribution.initialize` (`msunet.distributed.training`; JAX backend, `pip install 'msunet[jax]'`).

Nothing here imports Ray or JAX until it is used, and the package imports none of its modules: the
training side sits below training, the prediction side above inference.
"""
