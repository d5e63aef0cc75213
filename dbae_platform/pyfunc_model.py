"""The code MLflow stores with a registered DBAE and runs to load it (models from code: no pickled objects).

dbae_platform.registry logs this file as the pyfunc model; the class is dbae_platform.pyfunc.DBAEModel.
"""

from mlflow.models import set_model

from dbae_platform.pyfunc import DBAEModel

set_model(DBAEModel())
