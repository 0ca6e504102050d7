"""The small Flask app of the hosting benchmark: one JSON route, serialised per request.

Run under `forkd serve flask_json:app` and gunicorn's gthread worker alike; Flask's own
`jsonify` does the encoding, so this measures a real framework's request path on top of
each server.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

app = Flask(__name__)


@app.get("/json")
def hello_json() -> dict[str, Any]:
    return {"message": "Hello, world!"}
