"""The live operator view of a running batch (``bioimp dashboard``)."""
