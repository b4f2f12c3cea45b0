"""The model server: ``tweakline serve RELEASE`` answers predictions with the release's live revision."""
