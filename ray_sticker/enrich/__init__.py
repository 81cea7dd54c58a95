"""Enrichment: batch-inference jobs that add annotation columns to canonical datasets."""
