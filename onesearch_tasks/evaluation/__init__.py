"""Offline evaluation of trained models."""
