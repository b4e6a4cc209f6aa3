"""The gateway's routes, one router per resource: classification, pipelines, health and metrics."""
