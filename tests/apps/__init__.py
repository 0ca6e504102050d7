"""Real applications (Django, Flask, FastAPI, the web tap) served by a real forkd."""
