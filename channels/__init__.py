"""Messaging channels: one module per provider behind one small interface."""
