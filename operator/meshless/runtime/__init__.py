"""The runtime layer every controller stands on: a store per kind (store.py) and one tracker
of the operator's own writes (writes.py). Neither calls the API; the watches feed them, the
controllers read them, plan, and write."""
