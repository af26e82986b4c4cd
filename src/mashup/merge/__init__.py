"""mashup.merge"""
