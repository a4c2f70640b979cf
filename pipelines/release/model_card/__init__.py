"""The model card shipped inside every deployed version (``model_card.md``, ``model_card.json``, figures).

``card``   what the card says and the descriptive files of a version folder
``plots``  its figures as reproducible SVG (matplotlib)
"""

from __future__ import annotations

from pipelines.release.model_card.card import ModelCard, build_model_card, card_files, model_card_data

__all__ = ["ModelCard", "build_model_card", "card_files", "model_card_data"]
