"""mashup.models"""
