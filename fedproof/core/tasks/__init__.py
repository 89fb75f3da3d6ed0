"""The tasks that ship with fedproof (``fedproof.core.task.BUILT_IN``): each is what a user writes for their own."""
