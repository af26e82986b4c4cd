"""mashup.train"""
