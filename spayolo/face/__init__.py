"""Face front-end: detectors (MTCNN by default, YOLO or YuNet models on request) and eye-aligned crops."""

from .align import aligned_crops
from .detectors import Detections, FaceDetector, MTCNNDetector, YOLOFaceDetector, YuNetDetector, build_detector

__all__ = ("Detections", "FaceDetector", "MTCNNDetector", "YOLOFaceDetector", "YuNetDetector", "aligned_crops",
           "build_detector")
