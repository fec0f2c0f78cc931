"""Argo Rollouts analysis dry run: run AnalysisTemplates against a live Prometheus, Argo's rules."""
