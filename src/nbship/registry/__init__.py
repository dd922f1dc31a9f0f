"""Model versions, the shared model store, promotion gates, model cards."""
