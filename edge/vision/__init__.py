"""Face pipeline: detect -> align -> quality -> embed, all on-device with TFLite."""
