"""`medasr rehearse`: the real presets run offline against faithful, scaled-down replicas of what they download
(Hub models under their real repo ids and file names, the datasets in their upstream layouts)."""
