from cvpipe._native import Video
