"""`miragedet serve`: an HTTP service (FastAPI + uvicorn) and a web page over a Detector.

app.py: the application assembled; state.py: what the routes share, and the model's loading;
routes_info.py (health, readiness, metrics, the model), routes_score.py (/v1/detect, its access
log) and routes_page.py (the web page): the routers; auth.py: the API key check; contract.py:
the OpenAPI models and error codes; uploads.py: request bytes to model inputs; results.py:
outputs to result rows; keys.py: API keys, rate limits and quotas; batching.py: the model queue
and metrics; settings.py.
"""

from .app import create_app, serve
from .settings import ServerSettings
from .uploads import ALLOWED_FORMATS, prepare

__all__ = ["ALLOWED_FORMATS", "ServerSettings", "create_app", "prepare", "serve"]
