"""The search service: a read-only HTTP API and web page over a trained model and a feature store.

``backend`` answers requests (no HTTP), ``app`` is the FastAPI app and page, ``server`` runs it on
uvicorn, ``demo`` finds the demo's artifacts in a workspace. Entry: ``python -m models serve``.
"""
