"""Rendered RGB-D robot scenes: PyBullet table-tops with real meshes, metric depth and GT.

``layout`` draws a scene as data (``spec``), ``world`` builds and renders it, ``generate`` writes
videos in the generic dataset layout (the `m4sam scenes` verb); ``assets`` holds the object
pool and its train/val split, ``camera`` the intrinsics and trajectories, ``textures`` the
procedural materials. The sensor model lives in ``m4sam_ros.learn.sensor_model``.
"""
