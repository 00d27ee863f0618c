"""corral.runner"""
