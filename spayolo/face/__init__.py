"""Face front-end: detectors (MTCNN by default, YOLO or YuNet models on request) returning boxes and landmarks."""

from .detectors import Detections, FaceDetector, MTCNNDetector, YOLOFaceDetector, YuNetDetector, build_detector
from .mtcnn import MTCNN

__all__ = ("MTCNN", "Detections", "FaceDetector", "MTCNNDetector", "YOLOFaceDetector", "YuNetDetector", "build_detector")
