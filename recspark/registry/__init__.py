"""MLflow: the tracking store, the registered model and its aliases.

* :mod:`recspark.registry.store`: which store a configuration uses, the reachability check,
  training and evaluation runs.
* :mod:`recspark.registry.scorer`: top-K for user histories from a model's artifacts, with the
  recommend stage's kernel (no Spark, no MLflow).
* :mod:`recspark.registry.pyfunc`: the registered ``mlflow.pyfunc`` model around the scorer.
* :mod:`recspark.registry.models`: registering a trained model, resolving ``models:/`` URIs,
  moving aliases.
* :mod:`recspark.registry.promote`: moving the champion alias when a candidate is better.

Everything that imports ``mlflow`` does so inside functions (or in ``pyfunc``, imported only
when a model is logged or loaded), so that configuration loading stays light.
"""
