"""An OpenAI-compatible HTTP server for one run: `GET /v1/models`, `POST /v1/completions`,
`POST /v1/chat/completions` (both with `stream: true` as server-sent events), `GET /health`.

api.py: the request models and OpenAI's error shape; responses.py: the response bodies; app.py: the HTTP app
(FastAPI); server.py: the model loaded, the socket bound and uvicorn serving the app; batcher.py: the worker
thread that decodes waiting requests together (dynamic batching).
"""

from gptlab.posttrain.serve.server import GptlabServer, make_server, serve

__all__ = ["make_server", "serve", "GptlabServer"]
