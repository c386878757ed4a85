"""MedSafetyWorld: a synthetic medical world with an exact definition of safety (../shared/MEDSAFETYWORLD.md)."""
