"""The served model's code, logged with every registered version (MLflow models-from-code): MLflow runs this file
to build the pyfunc instead of unpickling one. See tune_ct.registry.serving."""

from mlflow.models import set_model

from tune_ct.registry.serving import FilmClassifier

set_model(FilmClassifier())
