"""SynthDrive: a procedural driving world, sensed by a simulated spinning LiDAR and six
cameras, written to disk in the real nuScenes and KITTI layouts (``distill3d synth``)."""
