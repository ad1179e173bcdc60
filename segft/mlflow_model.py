"""Models-from-code entry for MLflow: the file MLflow runs to obtain the pyfunc (see ``segft.pyfunc``)."""

from mlflow.models import set_model

from segft.pyfunc import SegmentationPyfunc

set_model(SegmentationPyfunc())
