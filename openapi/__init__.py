"""The committed OpenAPI document (openapi.json), kept equal to the served one by a test."""
