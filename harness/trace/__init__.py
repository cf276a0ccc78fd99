"""Trace replay support: reading the Azure LLM trace schema, splitting one trace across services,
Knative's KPA as Knative implements it, and the simulated vLLM replica both policies run on."""
