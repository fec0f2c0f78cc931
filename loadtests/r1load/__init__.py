"""Helpers of the Locust load test (loadtests/locustfile.py): prompts, options, shapes, SLO gate."""
