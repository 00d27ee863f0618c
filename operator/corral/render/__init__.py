"""corral.render"""
