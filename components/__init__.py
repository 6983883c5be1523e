"""ComponentResources shared by every stack: one module per thing deployed."""
