"""Test support: scripted workers whose args choose the outcome."""
