"""The help chat's shells: its Redis record (store.py) and the gateway's part (relay.py)."""
